#!/usr/bin/env python3
"""The floor for bench/sync: phpMyAdmin's quick CSV export of one table over plain HTTP, no browser.

    plain_export.py OUT.csv      (settings from the environment: PMA_URL, PMA_USERNAME,
                                  PMA_PASSWORD, PMA_DATABASE, PMA_TABLE; PLAIN_NULL: the NULL
                                  token, default phpMyAdmin's `NULL`)

Logs in with cookie auth (GET the login page for `token` and `set_session`, POST the credentials),
takes the new token from the page phpMyAdmin answers with, then POSTs the fields the export page's
form `dump` sends for a quick CSV download (read from phpMyAdmin 5.2.1's form) and streams the
body to OUT.csv. Checks the body is CSV (starts with the header row, not `<`). Prints one JSON line:
{"login_seconds", "export_seconds", "total_seconds", "bytes", "status"}. Standard library only.
"""

import http.cookiejar
import json
import os
import re
import sys
import time
import urllib.parse
import urllib.request

CHUNK = 1 << 20


def hidden(html, name):
    m = re.search(r'name="%s" value="([^"]*)"' % re.escape(name), html)
    if not m:
        raise SystemExit("plain_export: no %r field in the page" % name)
    return m.group(1)


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = sys.argv[1]
    base = os.environ["PMA_URL"].rstrip("/") + "/"
    db = os.environ.get("PMA_DATABASE", "shop")
    table = os.environ.get("PMA_TABLE", "orders")
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    started = time.perf_counter()
    # 1. The login page: its form carries `token` and `set_session`.
    with opener.open(base + "index.php?route=/", timeout=60) as r:
        page = r.read().decode("utf-8", "replace")
    form = page[page.index('id="login_form"'):]
    login = {
        "pma_username": os.environ["PMA_USERNAME"],
        "pma_password": os.environ["PMA_PASSWORD"],
        "server": "1",
        "route": "/",
        "token": hidden(form, "token"),
        "set_session": hidden(form, "set_session"),
    }
    # 2. The login itself; phpMyAdmin redirects to its home page, which holds the new token.
    with opener.open(base + "index.php?route=/", urllib.parse.urlencode(login).encode(), timeout=60) as r:
        page = r.read().decode("utf-8", "replace")
    if 'id="login_form"' in page or "pma_navigation" not in page:
        m = re.search(r'alert-danger[^>]*>(.*?)</div>', page, re.S)
        raise SystemExit("plain_export: login failed: %s" % (re.sub(r"\s+", " ", re.sub("<[^>]+>", "", m.group(1))).strip() if m else "login form came back"))
    token = hidden(page, "token")
    logged_in = time.perf_counter()

    # 3. The export: what form[name=dump] of index.php?route=/table/export posts for a quick CSV
    #    download (phpMyAdmin 5.2.1), with the header row on.
    fields = {
        "db": db,
        "table": table,
        "export_type": "table",
        "export_method": "quick",
        "template_id": "",
        "token": token,
        "quick_or_custom": "quick",
        "what": "csv",
        "allrows": "1",
        "aliases_new": "",
        "output_format": "sendit",
        "filename_template": "@TABLE@",
        "remember_template": "on",
        "charset": "utf-8",
        "compression": "none",
        "maxsize": "",
        "csv_separator": ",",
        "csv_enclosed": '"',
        "csv_escaped": '"',
        "csv_terminated": "AUTO",
        "csv_null": os.environ.get("PLAIN_NULL", "NULL"),
        "csv_columns": "something",
        "csv_structure_or_data": "data",
    }
    total = 0
    with opener.open(base + "index.php?route=/export", urllib.parse.urlencode(fields).encode(), timeout=600) as r, open(out, "wb") as f:
        status = r.status
        first = r.read(CHUNK)
        if first[:1] == b"<" or not first.startswith(b'"id"'):
            f.write(first)
            raise SystemExit("plain_export: the export is not CSV with a header row (starts %r)" % first[:80])
        f.write(first)
        total += len(first)
        while True:
            chunk = r.read(CHUNK)
            if not chunk:
                break
            f.write(chunk)
            total += len(chunk)
    done = time.perf_counter()
    print(json.dumps({
        "login_seconds": round(logged_in - started, 3),
        "export_seconds": round(done - logged_in, 3),
        "total_seconds": round(done - started, 3),
        "bytes": total,
        "status": status,
    }))


if __name__ == "__main__":
    main()
