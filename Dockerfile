# shoal serve in a small, non-root runtime image.
#   docker build -t shoal .
#   docker run -p 127.0.0.1:8080:8080 -e SHOAL_API_KEY=... -e SHOAL_BUCKET=s3://my-bucket/index shoal
# serve refuses 0.0.0.0 without an API key (SHOAL_API_KEY, or
# SHOAL_API_KEY_READ and SHOAL_API_KEY_WRITE).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Portable x86-64 (no target-cpu=native): the image may run on any host.
RUN cargo build --release --locked --bin shoal && strip target/release/shoal

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --create-home shoal
COPY --from=build /src/target/release/shoal /usr/local/bin/shoal
USER 10001
WORKDIR /data
ENV SHOAL_BUCKET=/data/shoal-data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/shoal"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
