# pma-cache: the API (`serve`), the standalone worker (`worker`) and one-off syncs (`sync`) in one image.
# Build:  docker build -t pma-cache .
# Run:    docker run -p 8080:8080 -e API_KEY=... -e ADMIN_API_KEY=... -v pma-cache:/app/cache pma-cache
# See README.md, section Deploy, for the deployments (replicas + worker with Redis, serve + cron, serve alone).
# Without a registry: bin/image makes the two base images from Debian's packages and builds this
# file on them (RUST_IMAGE and RUNTIME_IMAGE name them; the defaults are the public images).
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
# Build stage: compile the release binary. The Rust version is pinned so builds are repeatable;
# bookworm matches the runtime stage's glibc.
FROM ${RUST_IMAGE} AS build
WORKDIR /src

# Dependencies first, in their own layer: a change under src/ does not rebuild them. A placeholder
# lib.rs and main.rs let cargo compile every dependency from Cargo.toml and Cargo.lock alone.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. Touching the crate roots makes cargo rebuild the crate itself even when the
# copied files are older than the placeholders it just compiled. The line tables that name file
# and line in a panic's backtrace are kept, compressed: about 700 MB as built.
COPY src ./src
RUN touch src/lib.rs src/main.rs \
    && cargo build --release --locked \
    && objcopy --compress-debug-sections=zlib target/release/pma-cache /usr/local/bin/pma-cache

# ---------------------------------------------------------------------------------------------
# Runtime stage: Debian's Chromium and ChromeDriver, installed in one apt-get line from the same
# release so their versions always match (a drift between them fails every session with "This
# version of ChromeDriver only supports Chrome version N"). tini runs as PID 1 and reaps the
# processes Chromium leaves behind. bin/setup installs the same packages for the tests.
FROM ${RUNTIME_IMAGE} AS runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Package versions come from the bookworm release the base image pins; Debian's security updates
# for Chromium replace older versions, so an exact version pin would break the build within weeks.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        chromium chromium-driver ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*

# A non-root user. Chromium needs a writable home for its profile; the sync already passes
# --no-sandbox, which Chromium needs in a container without user namespaces.
RUN groupadd --gid 10001 pma \
    && useradd --uid 10001 --gid pma --create-home --home-dir /home/pma --shell /usr/sbin/nologin pma \
    && mkdir -p /app/cache \
    && chown pma:pma /app/cache

COPY --from=build /usr/local/bin/pma-cache /usr/local/bin/pma-cache

ENV CACHE_FILE=/app/cache/data_cache.json \
    PORT=8080 \
    HOST=0.0.0.0 \
    CHROMEDRIVER_PATH=/usr/bin/chromedriver \
    CHROME_PATH=/usr/bin/chromium \
    HOME=/home/pma

WORKDIR /app
# The cache file and the failure screenshots (cache/failures/) live here; mount a volume so they
# survive a restart and, in deployment A, so `serve` and `worker` share them. Docker copies this
# folder's owner into a new named volume, so the non-root user can write to it.
VOLUME ["/app/cache"]
USER 10001:10001
EXPOSE 8080

# GET /health with bash's /dev/tcp: no curl or wget in the image. `serve` answers it on PORT,
# `worker` on WORKER_PORT; the check takes whichever answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["bash", "-c", "for port in ${PORT:-8080} ${WORKER_PORT:-9090}; do (exec 3<>/dev/tcp/127.0.0.1/$port && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && grep -q '\"ok\"' <&3) 2>/dev/null && exit 0; done; exit 1"]

ENTRYPOINT ["/usr/bin/tini", "--", "pma-cache"]
CMD ["serve"]
