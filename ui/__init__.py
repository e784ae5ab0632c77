"""Gradio UI for GPTailor Studio. Depends on the engine (``gptailor``); the engine never imports it."""
