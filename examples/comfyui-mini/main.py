# A stand-in for ComfyUI's main.py: the example tree only needs ComfyUI's shape.
import comfy.model

if __name__ == "__main__":
    print(comfy.model.describe())
