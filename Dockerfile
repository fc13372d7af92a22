# The liqwatch image for docker-compose.yml: workers, the webhook receiver and topic creation.
#   docker build -t liqwatch .
# Built as a wheel (package data included: scenario configs, the Kafka pom, Prometheus and Alertmanager configs,
# dashboards) and installed from it, as a user would; only what the wheel needs is copied in, so that a local .venv
# or test data never reaches the image.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY liqwatch ./liqwatch
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels

# Workers keep Faust data under ~/.cache/liqwatch and numba compiles into its cache: a writable home.
RUN useradd --create-home --uid 10001 liqwatch
USER liqwatch
WORKDIR /home/liqwatch
ENV PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/home/liqwatch/.cache/numba

CMD ["liqwatch", "--help"]
