# The stack's Python services and the fault proxy: python -m stack.services.<name>,
# python -m chaoscheckout.network.proxy. Build context: the repository root (or the
# context stack/docker/images.py assembles, same layout).
# BASE_IMAGE: a public Debian 12 image when a registry is reachable; on machines without
# one, the locally imported base (python -m stack.docker.base_image).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# 1 = install only from the wheels in stack/docker/wheels (no network needed)
ARG PIP_NO_INDEX=0
RUN command -v python3 >/dev/null && python3 -c "import venv, ensurepip" 2>/dev/null \
    || (apt-get update && apt-get install -y --no-install-recommends python3 python3-venv iproute2 \
        && rm -rf /var/lib/apt/lists/*)
COPY stack/docker/requirements.txt /opt/cc/requirements.txt
COPY stack/docker/wheels/ /opt/cc/wheels/
RUN python3 -m venv /opt/venv \
    && PIP_NO_INDEX=${PIP_NO_INDEX} /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
       --find-links /opt/cc/wheels -r /opt/cc/requirements.txt
COPY chaoscheckout/ /app/chaoscheckout/
COPY stack/ /app/stack/
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONPATH=/app CHAOSCHECKOUT_BIND_HOST=0.0.0.0
LABEL org.chaoscheckout.image=app
CMD ["python", "-c", "print('give a command: python -m stack.services.<name>')"]
