//! The browser: a ChromeDriver process started for one sync (or a remote WebDriver server) and a
//! headless Chromium session driven through fantoccini.
