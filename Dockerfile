# syntax=docker/dockerfile:1
#
# ringmaster as a container image: `docker build -t ringmaster .`
#
# Two stages: the Rust toolchain builds a release binary (dependencies and target/ live in
# BuildKit cache mounts, so a rebuild after a source change compiles only ringmaster),
# and a distroless runtime holds the binary, glibc and CA certificates and nothing else:
# no shell, no package manager, running as the unprivileged user 65532.
#
#   docker run --rm ringmaster demo                    # the demo, all in one container
#   docker run --rm -p 8080:8080 ringmaster hub serve --in-memory --listen 0.0.0.0:8080
#   (in a cluster: manifests/install.yaml or charts/ringmaster run `ringmaster run --kube`)

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# The release profile keeps line tables for profiling; an image does not need them.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# `ringmaster demo` compiles the example rollouts and fleet into the binary.
COPY examples ./examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ringmaster \
    && install -D -m 0755 target/release/ringmaster /out/ringmaster

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="ringmaster" \
      org.opencontainers.image.description="Declarative phased rollouts of Azure IoT Hub automatic device configurations, with an embedded IoT hub" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/ringmaster /usr/local/bin/ringmaster
# The examples, for `ringmaster validate /usr/share/ringmaster/examples/rollouts` and
# `hub serve --fleet /usr/share/ringmaster/examples/fleet.yaml`.
COPY examples /usr/share/ringmaster/examples
USER 65532:65532
WORKDIR /tmp
# 9090: the controller's API; 8081: health and metrics; 8080: `hub serve`.
EXPOSE 9090 8081 8080
ENTRYPOINT ["/usr/local/bin/ringmaster"]
CMD ["--help"]
