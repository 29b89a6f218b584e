# welkin-dash: web, worker and beat share this image. Two stages: the build stage makes a
# virtualenv of the run-time packages (requirements-runtime.txt, binary wheels only, no
# compiler needed) and collects the static files; the run-time stage copies those and the
# code onto a clean base, with no pip cache, tests, test tools or build files, and runs as
# the numeric non-root user 10001 (so the kubelet can verify runAsNonRoot, and the image
# passes its own check). Steps mirrored in CI by tests/test_image.py, in a clean venv.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements-runtime.txt /tmp/
RUN /opt/venv/bin/pip install --no-deps --only-binary=:all: -r /tmp/requirements-runtime.txt \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall -y -q pip setuptools
WORKDIR /app
COPY manage.py ./
COPY welkin_dash welkin_dash
COPY compliance compliance
COPY templates templates
COPY static static
# Static files are collected here, once (hashed names; served by WhiteNoise). The keys
# below exist for this one command only: nothing is signed or encrypted at build time.
RUN DEBUG=0 STATIC_ROOT=/app/staticfiles WELKIN_STATIC_MANIFEST=1 WELKIN_VAR_DIR=/tmp/build-var \
    SECRET_KEY=collectstatic-only-collectstatic-only-collectstatic-only \
    WELKIN_SIGNING_KEY=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= \
    WELKIN_FERNET_KEYS=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= \
    /opt/venv/bin/python manage.py collectstatic --noinput -v0 \
    && /opt/venv/bin/python -m compileall -q /app/compliance /app/welkin_dash

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    STATIC_ROOT=/app/staticfiles \
    WELKIN_EXPORTS_DIR=/exports
RUN groupadd --gid 10001 welkin \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin welkin \
    && mkdir -p /exports && chown 10001:10001 /exports
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001
EXPOSE 8000
CMD ["gunicorn", "-c", "python:welkin_dash.gunicorn", "welkin_dash.wsgi"]
