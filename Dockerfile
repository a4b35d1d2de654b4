FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY livepush ./livepush
RUN pip install --no-cache-dir .
EXPOSE 8000
CMD ["livepush", "serve", "--host", "0.0.0.0", "--port", "8000"]
