# A stand-in for ComfyUI's main.py: the example tree only needs ComfyUI's shape. Run by the
# materialized environment, it also shows that the pinned wheel (comfyhello) is installed.
import comfy.model

if __name__ == "__main__":
    print(comfy.model.describe())
    try:
        import comfyhello
    except ImportError:
        print("comfyhello is not installed: run me with the materialized venv/bin/python")
    else:
        print(comfyhello.greet())
