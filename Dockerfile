# zen-gateway: multi-stage build, small non-root runtime image.
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Every backend (`full`): the image is what teams deploy, MongoDB, RabbitMQ,
# Redis and OTLP export included.
RUN cargo build --release --locked --features full --bin zen-gateway

FROM debian:12.12-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311+deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/zen-gateway --create-home zen \
    && mkdir -p /var/lib/zen-gateway/data \
    && chown -R 10001 /var/lib/zen-gateway
COPY --from=build /src/target/release/zen-gateway /usr/local/bin/zen-gateway
USER 10001
WORKDIR /var/lib/zen-gateway
ENV DATA_DIR=/var/lib/zen-gateway/data \
    SERVER_PORT=8080 \
    LOG_FORMAT=json
EXPOSE 8080
VOLUME ["/var/lib/zen-gateway/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/zen-gateway", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/zen-gateway"]
CMD ["serve"]
