# syntax=docker/dockerfile:1
# The latchkey image: the daemon and its CLI, nothing else.
#   docker build -t ghcr.io/latchkey/latchkey:0.1.0 .
# The tag is the crate version (Cargo.toml), which is the chart's appVersion, so the chart's default
# image is what this file builds; push it to the registry the chart's image.repository names.
#
# The binary is the normal release build: the vendor simulators are still compiled in (there is no
# cargo feature to leave them out yet); they only run when asked (`latchkey sim`). `latchkey demo`
# needs the repository's config/ folder and is not meant to run from the image.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin latchkey \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin latchkey \
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
