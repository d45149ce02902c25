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

# Shared base of both runtime images: the plain one (the last stage, what `docker build .` gives)
# and the Nextcloud ExApp one (`docker build --target exapp .`).
FROM debian:bookworm-slim AS runtime
# Not pinned: the image should pick up Debian's security updates when rebuilt.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# Nextcloud External App (AppAPI behind a HaRP deploy daemon): ycord plus frpc, which carries
# HaRP's connections to ycord's unix socket. See nextcloud/entrypoint.sh.
FROM runtime AS exapp
# frp 0.61.1, the version HaRP runs, for the architecture being built (BuildKit sets TARGETARCH;
# dpkg's answer is the fallback). The checksums are of the upstream release tarballs, as
# published in nextcloud/HaRP's README ("Adapting ExApps to use HaRP"). They are written here, not
# taken as build arguments, so that a --build-arg cannot swap the pinned download.
ARG TARGETARCH
RUN set -eu; \
    frp_version=0.61.1; \
    arch="${TARGETARCH:-$(dpkg --print-architecture)}"; \
    case "$arch" in \
        amd64) sha256=bff260b68ca7b1461182a46c4f34e9709ba32764eed30a15dd94ac97f50a2c40 ;; \
        arm64) sha256=af6366f2b43920ebfe6235dba6060770399ed1fb18601e5818552bd46a7621f8 ;; \
        *) echo "no pinned frp checksum for architecture $arch" >&2; exit 1 ;; \
    esac; \
    dir="frp_${frp_version}_linux_${arch}"; \
    curl -fsSL --proto '=https' --retry 3 -o /tmp/frp.tar.gz \
        "https://github.com/fatedier/frp/releases/download/v${frp_version}/${dir}.tar.gz"; \
    printf '%s  /tmp/frp.tar.gz\n' "$sha256" > /tmp/frp.tar.gz.sha256; \
    sha256sum -c /tmp/frp.tar.gz.sha256; \
    tar -xzf /tmp/frp.tar.gz -C /tmp "${dir}/frpc"; \
    install -m 0755 "/tmp/${dir}/frpc" /usr/local/bin/frpc; \
    rm -rf /tmp/frp.tar.gz /tmp/frp.tar.gz.sha256 "/tmp/${dir}"; \
    frpc --version
# A non-root user with a home of its own; the data directory is APP_PERSISTENT_STORAGE, the volume
# AppAPI mounts (at /nc_app_ycord_data for the app id ycord). That mount point is created here,
# owned by the user, because Docker gives a new, empty named volume the ownership of the image's
# directory: without it the volume would be root's and ycord could not write its data.
# /certs is the user's so that HaRP, which installs its FRP client certificates with
# `docker exec mkdir -p /certs/frp` (run as this user) and then copies them in, can create
# /certs/frp; the entrypoint turns TLS on only when that directory exists.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/ycord \
        --shell /usr/sbin/nologin ycord \
    && install -d -o ycord -g ycord -m 0750 /nc_app_ycord_data \
    && install -d -o ycord -g ycord -m 0755 /certs
COPY --from=build /src/target/release/ycord /usr/local/bin/ycord
COPY --chmod=0755 nextcloud/entrypoint.sh /usr/local/lib/ycord/entrypoint.sh
COPY --chmod=0755 nextcloud/healthcheck.sh /usr/local/lib/ycord/healthcheck.sh
USER 10001:10001
WORKDIR /home/ycord
# AppAPI's deploy waits for the container to turn healthy: probe often while it starts.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --start-interval=2s --retries=3 \
    CMD ["/usr/local/lib/ycord/healthcheck.sh"]
ENTRYPOINT ["/usr/local/lib/ycord/entrypoint.sh"]

# The plain image (the default target): ycord alone, data in the /data volume.
FROM runtime
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin ycord \
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
