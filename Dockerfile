# fluxgate: one image with fluxgate-ingest, fluxgate-dispatcher and the fluxgate CLI.
#
#   docker build -t fluxgate .                       # the image the Kubernetes manifests run
#   docker build --target stand-in -t fluxgate-stand-in .   # the API stand-in docker-compose uses
#
# The runtime is distroless (glibc, CA certificates for OIDC/JWKS over https, no shell), run as
# the non-root UID 65532. BINARIES=prebuilt assembles the same runtime stages from binaries built
# outside (build context = a directory holding them): the test suite's path, where no registry
# and so no Rust builder image is reachable. It needs BuildKit, which skips the unused stages.

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARIES=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The workspace keeps line tables in release builds for profiling; the image does not need
# them (symbols stay, so backtraces still name functions). Caches make a rebuild incremental.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      --bin fluxgate-ingest --bin fluxgate-dispatcher --bin fluxgate \
      --bin fluxgate-apiserver --bin fluxgate-sample \
 && mkdir /out \
 && cd target/release \
 && cp fluxgate-ingest fluxgate-dispatcher fluxgate fluxgate-apiserver fluxgate-sample /out/

FROM scratch AS prebuilt
COPY . /out/

FROM ${BINARIES} AS binaries

# The Kubernetes API stand-in (playing the Flux controllers) and the sample webhook sender, for
# docker-compose.yml: not part of the image that runs in a cluster.
FROM ${RUNTIME_IMAGE} AS stand-in
COPY --from=binaries /out/fluxgate-apiserver /out/fluxgate-sample /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/fluxgate-apiserver"]

FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="fluxgate" \
      org.opencontainers.image.description="A durable webhook receiver for Flux: ingest, dispatcher and CLI joined by NATS JetStream" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=binaries /out/fluxgate-ingest /out/fluxgate-dispatcher /out/fluxgate /usr/local/bin/
USER 65532:65532
# mimalloc asks the kernel for transparent huge pages, so its heap is resident in 2 MiB steps:
# ingest idles at 23 MiB with them and 14 MiB without, at the same throughput
# (docs/benchmarks.md).
ENV MIMALLOC_ALLOW_THP=0
# webhooks, ingest admin, dispatcher admin
EXPOSE 9292 9293 9294
CMD ["/usr/local/bin/fluxgate-ingest"]
