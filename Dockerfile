FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY workers ./workers
RUN pip install --no-cache-dir .
EXPOSE 2575 11112
CMD ["mwl-broker", "serve"]
