# opsloop: `docker build -t opsloop .` then
#   docker run -e SLACK_BOT_TOKEN -e SLACK_APP_TOKEN -v $PWD/opsloop.yml:/etc/opsloop/opsloop.yml:ro \
#              -v opsloop-data:/var/lib/opsloop opsloop
# Stage 1 builds a virtual environment; stage 2 copies only that, and runs as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
COPY adapters ./adapters
RUN python -m venv /opt/opsloop \
 && /opt/opsloop/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/opsloop/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 opsloop \
 && useradd --system --uid 10001 --gid opsloop --home-dir /var/lib/opsloop --create-home opsloop \
 && mkdir -p /etc/opsloop
COPY --from=build /opt/opsloop /opt/opsloop
ENV PATH=/opt/opsloop/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OPSLOOP_CONFIG=/etc/opsloop/opsloop.yml \
    OPSLOOP_DB=/var/lib/opsloop/opsloop.db \
    OPSLOOP_HTTP_HOST=0.0.0.0 \
    OPSLOOP_HTTP_PORT=3000
USER opsloop
WORKDIR /var/lib/opsloop
VOLUME ["/var/lib/opsloop"]
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('OPSLOOP_HTTP_PORT', '3000') + '/healthz', timeout=2)"]
ENTRYPOINT ["opsloop"]
CMD ["run"]
