FROM python:3.11-slim
WORKDIR /app
# The locked, hash-checked set first (the same as ./dev serve installs), then the
# project without resolving anything again: the image cannot drift from the lock.
COPY requirements/serve.txt ./requirements/serve.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/serve.txt
COPY pyproject.toml README.md ./
COPY livepush ./livepush
RUN pip install --no-cache-dir --no-deps --no-build-isolation .
EXPOSE 8000
CMD ["livepush", "serve", "--host", "0.0.0.0", "--port", "8000"]
