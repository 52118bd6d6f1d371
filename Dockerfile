# syntax=docker/dockerfile:1
# cim-server in a container: built in the Rust image, run from a distroless one (glibc and
# CA certificates, no shell, no package manager) as a user without privileges.
#
#   docker build -t cim-server .
#   docker run -d --name cim \
#     -e CIM_AUTH__TOKEN_SECRET="$(openssl rand -hex 32)" -e CIM_HTTP__API_KEY="$(openssl rand -hex 24)" \
#     -p 23456:23456 -p 34567:34567 -p 8080:8080 -v cim-data:/data cim-server
#
# The configuration is /etc/cim/cim.toml (packaging/container.toml); CIM_* variables override
# it, and a file of your own mounted there (with certificates beside it) replaces it.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# The registry and the build directory are cached between builds; the binary is copied out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cim-server --bin cim-server \
    && install -D -m 0755 target/release/cim-server /out/cim-server \
    && install -d -m 0700 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/cim-server /usr/local/bin/cim-server
COPY packaging/container.toml /etc/cim/cim.toml
# The store: redb's database and the message ids' high-water mark.
COPY --from=build --chown=65532:65532 /out/data /data
VOLUME ["/data"]
# CIM's binary protocol, WebSocket, the HTTP API (with /metrics and /console).
EXPOSE 23456 34567 8080
USER 65532:65532
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/cim-server", "--config", "/etc/cim/cim.toml", "health"]
# SIGTERM (docker stop) shuts down gracefully within shutdown.grace_ms (10 s): give docker stop
# a longer timeout (-t 15) than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cim-server"]
CMD ["--config", "/etc/cim/cim.toml"]
