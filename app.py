"""Entry point of GPTailor Studio (what a Hugging Face Space runs): ``python app.py``."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ui.app import main  # noqa: E402

if __name__ == "__main__":
    main()
