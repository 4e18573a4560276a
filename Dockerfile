# The broker's image, for `mwl-broker serve` and `mwl-broker worker` (docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY workers ./workers
RUN pip install --no-cache-dir .
# HL7 MLLP, DICOM, the web console (JSON API, /metrics, /readyz)
EXPOSE 2575 11112 8080
CMD ["mwl-broker", "serve"]
