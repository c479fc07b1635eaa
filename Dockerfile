FROM python:3.11-slim
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY web web
COPY tasks tasks
COPY workers workers
COPY cache cache
COPY safety safety
RUN pip install --no-cache-dir .
ENV PIXELMILL_DATA_DIR=/data
EXPOSE 8000
CMD ["pixelmill", "web", "--host", "0.0.0.0", "--port", "8000"]
