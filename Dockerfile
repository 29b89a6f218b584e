# welkin-dash: web, worker and beat share this image. It runs as a numeric non-root user,
# so it passes its own check under runAsNonRoot (the kubelet can verify uid 10001).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin welkin \
    && DEBUG=1 python manage.py collectstatic --noinput \
    && mkdir -p /app/var && chown 10001:10001 /app/var
USER 10001:10001
EXPOSE 8000
CMD ["gunicorn", "welkin_dash.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3"]
