def describe():
    return "comfyui-mini: a self-contained example tree for comfystore"
