# syntax=docker/dockerfile:1
# quay-authz container image: a release build on Debian bookworm, run from distroless as non-root.
#
#   docker build --build-arg QUAY_AUTHZ_GIT_REVISION="$(git rev-parse HEAD)" -t quay-authz:0.1.0 .
#   docker run --rm -p 9191:9191 -p 9090:9090 \
#     -v "$PWD/deploy/examples/config.yaml:/etc/quay-authz/config.yaml:ro" quay-authz:0.1.0
#
# The context excludes .git (.dockerignore), so the git revision reaches build.rs through the
# QUAY_AUTHZ_GIT_REVISION build argument.

ARG RUST_VERSION=1.95

# --- builder -------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# Dependencies first, against stub sources, so that a change to src/ reuses this layer and
# recompiles only quay-authz itself. build.rs and proto/ are real: the admin API is compiled here.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
# Every target Cargo.toml names needs a stub file, or cargo refuses the manifest.
RUN mkdir -p src/bin benches \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/quay-authz-bench.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/check.rs \
    && echo 'fn main() {}' > benches/token_cache.rs \
    && cargo build --release --locked \
    && rm -rf src benches

# Declared after the dependency layer, so a new revision does not rebuild the dependencies.
ARG QUAY_AUTHZ_GIT_REVISION=unknown
ENV QUAY_AUTHZ_GIT_REVISION=${QUAY_AUTHZ_GIT_REVISION}

COPY src ./src
COPY benches ./benches
# COPY keeps the files' modification times, which can be older than the stub build's outputs;
# touching them makes cargo rebuild the crate from the real sources.
# Only the service: no benchmark binary, and without the `dev` feature, so neither the
# development issuer (it mints tokens for anyone) nor the bench tooling is compiled in.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --no-default-features --bin quay-authz \
    && install -D -m 0755 target/release/quay-authz /out/quay-authz

# --- runtime -------------------------------------------------------------------------------------
# glibc and the CA bundle (for HTTPS to the IdPs' discovery and JWKS endpoints), no shell, no
# package manager. `nonroot` is uid 65532, the uid the Kubernetes manifests run as.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG QUAY_AUTHZ_GIT_REVISION=unknown
LABEL org.opencontainers.image.title="quay-authz" \
      org.opencontainers.image.description="Envoy ext_authz service for Quay with OIDC tokens" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${QUAY_AUTHZ_GIT_REVISION}"
COPY --from=builder /out/quay-authz /usr/local/bin/quay-authz
USER 65532:65532
# 9191: ext_authz Check and grpc.health.v1; 9090: /metrics, /healthz, /readyz. The admin API
# (listen.admin) is loopback-only and not exposed.
EXPOSE 9191 9090
ENTRYPOINT ["quay-authz"]
CMD ["serve", "--config", "/etc/quay-authz/config.yaml"]
