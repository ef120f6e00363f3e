# usage-sync: a two-stage build. The image holds the binary only, runs as
# an unprivileged user, keeps its write-ahead log (and the embedded SQLite
# database, unless DATABASE_URL points elsewhere) in a volume, and reports
# its health with the binary itself (no shell or curl in the image).
#   docker build -t usage-sync .
#   docker run -p 8080:8080 -v usage-sync-data:/var/lib/usage-sync usage-sync
# The test suite lints this file (crates/usage-sync-server/tests/api/deploy.rs).

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin usage-sync \
 && strip target/release/usage-sync

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/usage-sync --create-home usage-sync
COPY --from=build /src/target/release/usage-sync /usr/local/bin/usage-sync
USER 10001:10001
ENV USAGE_SYNC_LISTEN=0.0.0.0:8080 \
    USAGE_SYNC_DATA_DIR=/var/lib/usage-sync
VOLUME /var/lib/usage-sync
EXPOSE 8080
# Liveness: /healthz answers 200 as soon as the listener is up, during
# recovery too (readiness is /readyz, for a load balancer).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/usage-sync", "healthcheck", "--url", "http://127.0.0.1:8080"]
# SIGTERM drains requests and flushes; give it 45 s (docker stop -t 45).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/usage-sync"]
CMD ["serve"]
