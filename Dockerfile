# A slim image running `examhub serve`. Configure with DATABASE_URL, REDIS_URL, EXAMHUB_SECRET (see README).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    EXAMHUB_HOST=0.0.0.0 EXAMHUB_PORT=8080 EXAMHUB_DATA_DIR=/var/lib/examhub
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY sessions ./sessions
COPY storage ./storage
COPY loadtest ./loadtest
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/examhub examhub \
    && mkdir -p /var/lib/examhub && chown examhub /var/lib/examhub
USER examhub
EXPOSE 8080
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
ENTRYPOINT ["examhub"]
CMD ["serve"]
