# syntax=docker/dockerfile:1
#
# gcpool container image: a static-ish Rust binary on distroless/cc (glibc, no shell, non-root).
#
#   docker build -t gcpool .
#   docker run --rm -p 8080:8080 -p 9464:9464 \
#     -v "$PWD/deploy/compose/gcpool.yaml:/etc/gcpool/gcpool.yaml:ro" \
#     -e GC_CLIENT_01_ID=... -e GC_CLIENT_01_SECRET=... gcpool
#
# Config: mounted read-only at /etc/gcpool/gcpool.yaml (a Kubernetes ConfigMap or a bind mount).
#   Inside a container the API listener must be `0.0.0.0:8080` to be reachable from other pods or
#   hosts (config/fleet-redis.yaml, config/data-actions-gateway.yaml). config/sidecar.yaml listens on
#   127.0.0.1, which is right only when the caller shares the network namespace (a Pod sidecar).
# Secrets: never baked in. Pass them as env vars referenced from the config (`${GC_CLIENT_01_ID}`,
#   `${GCPOOL_API_KEY_SHA256}`, `${GCPOOL_REDIS_URL}`) or as files with the `*_file` keys
#   (e.g. `client_secret_file: /run/secrets/gc01`, `redis_url_file: ...`).
# Health: no HEALTHCHECK (the image has no shell or curl); orchestrators probe the admin port:
#   GET /healthz (liveness) and GET /readyz (readiness) on 9464.

# ---- build ---------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# Dependencies first, so source edits do not rebuild them: a dummy crate with the real manifest.
# rust-toolchain.toml is left out on purpose: the image's toolchain is the pinned 1.95, and rustup
# would otherwise try to download the exact patch release and its components.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches data \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/admission.rs \
 && echo 'fn main() {}' > benches/redis_admission.rs \
 && cargo build --release --locked \
 && rm -rf src benches target/release/gcpool target/release/deps/gcpool-* target/release/deps/libgcpool-* \
    target/release/.fingerprint/gcpool-*

# The real sources (routes.rs embeds data/genesys-operations.tsv at compile time).
COPY src ./src
COPY benches ./benches
COPY data ./data
RUN cargo build --release --locked --bin gcpool \
 && /src/target/release/gcpool --version

# ---- runtime -------------------------------------------------------------------------------
# distroless/cc: glibc + libgcc + CA certificates, no shell; :nonroot runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/gcpool /usr/local/bin/gcpool
USER 65532:65532
ENV GCPOOL_LOG_FORMAT=json
# 8080: API listener (server.listen); 9464: admin listener (server.admin_listen: /metrics /healthz
# /readyz /status), for probes and Prometheus only; keep it off Services and Ingresses.
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/gcpool"]
CMD ["run", "--config", "/etc/gcpool/gcpool.yaml"]
