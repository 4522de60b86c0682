# syntax=docker/dockerfile:1
# Starling's container image: built from a clean checkout with Debian's packages and
# crates.io's crates only (the official `rust` image is Debian bookworm with rustup's
# toolchain).
#
#   docker build --build-arg STARLING_COMMIT="$(git rev-parse --short HEAD)" -t starling .
#   docker run -d --name starling -p 1883:1883 \
#       -v "$PWD/passwd:/etc/starling/passwd:ro" -v starling-data:/var/lib/starling starling
#
# The build context has no .git (.dockerignore), so `starling --version` names the commit
# given as STARLING_COMMIT, or "unknown".

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
ARG STARLING_COMMIT=unknown
WORKDIR /src
COPY . .
# The registry and target directories are cache mounts: a rebuild after a source change
# compiles only what changed. The binary is copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    STARLING_GIT_COMMIT="${STARLING_COMMIT}" cargo build --release --locked -p starling \
    && install -D -m 0755 target/release/starling /out/starling

FROM debian:bookworm-slim
# The image's user owns the
# data volume; configuration and secrets are read-only to it.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/starling \
        --shell /usr/sbin/nologin starling \
    && install -d -o starling -g starling -m 0750 /var/lib/starling \
    && install -d -m 0755 /etc/starling
COPY --from=build /out/starling /usr/bin/starling
COPY packaging/docker/starling.toml /etc/starling/starling.toml
USER starling
WORKDIR /var/lib/starling
VOLUME ["/var/lib/starling"]
# MQTT. The HTTP listener (metrics, health, admin API) stays on 127.0.0.1:18080 inside the
# container unless the config binds it elsewhere.
EXPOSE 1883
# /healthz on the in-container HTTP listener, asked by the binary itself (no curl here).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["starling", "health", "--timeout", "4", "http://127.0.0.1:18080/healthz"]
# SIGTERM (docker stop): clients are told, the store is flushed, the broker exits within
# 8 s, below docker stop's default 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["starling"]
CMD ["serve", "--config", "/etc/starling/starling.toml"]
