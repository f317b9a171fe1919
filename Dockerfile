# syntax=docker/dockerfile:1
# The latchkey image: the daemon and its CLI, nothing else.
#   docker build -t ghcr.io/latchkey/latchkey:0.1.0 .
# The tag is the crate version (Cargo.toml), which is the chart's appVersion, so the chart's default
# image is what this file builds; push it to the registry the chart's image.repository names.
#
# The binary is the daemon alone (`--no-default-features`): no vendor simulators, no `latchkey sim`,
# `demo` or `bench`; those are for a checkout of the repository.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: a source change does not rebuild them.
# The simulators' crate is a workspace member, so its manifest is needed even though the image
# does not build it.
COPY Cargo.toml Cargo.lock askama.toml ./
COPY sim/Cargo.toml ./sim/
RUN mkdir src sim/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs sim/src/lib.rs \
    && cargo build --release --locked --no-default-features --bin latchkey \
    && rm -rf src sim/src
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --no-default-features --bin latchkey \
    && cp target/release/latchkey /latchkey

# distroless/cc: glibc, libgcc, CA certificates and a nonroot user; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="latchkey" \
      org.opencontainers.image.description="Keeps physical access in step with who works here" \
      org.opencontainers.image.source="https://github.com/latchkey/latchkey" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /latchkey /usr/local/bin/latchkey
# Connector profiles and example mappings, for configurations that name them (the chart mounts its own).
COPY connectors /usr/share/latchkey/connectors
COPY mappings /usr/share/latchkey/mappings
# Logs for collectors: JSON lines, no colour. A container's stderr is not a terminal anyway.
ENV LATCHKEY_LOG_FORMAT=json \
    NO_COLOR=1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/latchkey"]
CMD ["run", "--config", "/etc/latchkey/config/latchkey.toml"]
