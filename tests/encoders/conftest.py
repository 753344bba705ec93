import os

# No test may reach the Hugging Face Hub: a hub id that is not cached must fail, not download.
# Set before anything imports huggingface_hub, which reads it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
