# One image for every infaas service; the entrypoint is the `infaas` command, the service its argument:
#   docker build -t infaas .                                   # CPU: ONNX Runtime (+ TVM)
#   docker build -t infaas:gpu --build-arg VARIANT=gpu .       # GPU: onnxruntime-gpu with CUDA/cuDNN from pip
#   docker run --rm infaas dispatcher                          # settings: INFAAS_* env or INFAAS_CONFIG
# Not built here (this project's machines have no container engine); tests/test_kubernetes.py checks
# that what the manifests run exists in the CLI.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# cpu or gpu
ARG VARIANT=cpu
# more extras, comma-separated (e.g. tvm, tensorrt)
ARG EXTRAS=""

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 INFAAS_HOME=/var/lib/infaas
RUN useradd --system --create-home --home-dir /var/lib/infaas infaas

WORKDIR /src
COPY pyproject.toml README.md ./
COPY infaas ./infaas
RUN pip install ".[kubernetes${EXTRAS:+,${EXTRAS}}]" \
 && if [ "$VARIANT" = "gpu" ]; then \
        pip uninstall -y onnxruntime && pip install "onnxruntime-gpu[cuda,cudnn]>=1.19"; \
    elif [ "$VARIANT" != "cpu" ]; then echo "VARIANT must be cpu or gpu" >&2; exit 1; fi \
 && rm -rf /src

USER infaas
WORKDIR /var/lib/infaas
# 9100: /metrics, /healthz, /readyz (INFAAS_METRICS_PORT); 8000: the gateway
EXPOSE 9100 8000
ENTRYPOINT ["infaas"]
CMD ["--help"]
