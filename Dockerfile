# The liqwatch image for docker-compose.yml: workers, the webhook receiver and topic creation.
#   docker build -t liqwatch .
FROM python:3.11-slim

# Only what `pip install .` needs, so that a local .venv or test data never reaches the image.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY kernels ./kernels
RUN pip install --no-cache-dir . && rm -rf /src

# Workers keep Faust data under ~/.cache/liqwatch and numba compiles into its cache: a writable home.
RUN useradd --create-home --uid 10001 liqwatch
USER liqwatch
WORKDIR /home/liqwatch
ENV PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/home/liqwatch/.cache/numba

CMD ["liqwatch", "--help"]
