# syntax=docker/dockerfile:1
# ycord: multi-stage build. cargo-chef caches the compiled dependencies in their own layer,
# rebuilt only when Cargo.toml or Cargo.lock change; the runtime image is slim and non-root.

FROM rust:1-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.73
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin ycord
COPY . .
RUN cargo build --release --locked --bin ycord

FROM debian:bookworm-slim
# Not pinned: the image should pick up Debian's security updates when rebuilt.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin ycord \
    && mkdir -p /data \
    && chown ycord:ycord /data
COPY --from=build /src/target/release/ycord /usr/local/bin/ycord
USER 10001:10001
WORKDIR /data
VOLUME /data
# Every flag has a YCORD_* variable; these two make the image listen on all interfaces and
# keep its data in the volume.
ENV YCORD_LISTEN=0.0.0.0:8080 \
    YCORD_DATA_DIR=/data
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/ycord"]
CMD ["serve"]
