"""Build examples/wheels/comfyhello-1.0-py3-none-any.whl, byte for byte the same every time.

The example ComfyUI's requirements.txt names `comfyhello`; `comfystore pin --offline
--wheels-dir examples/wheels` pins it without an index. Run: python3 examples/src/build_wheel.py
"""
import base64, hashlib, pathlib, zipfile

NAME, VERSION = "comfyhello", "1.0"
FILES = {
    f"{NAME}/__init__.py": 'def greet():\n    return "hello from comfyhello 1.0, installed by comfystore"\n\n\ndef main():\n    print(greet())\n',
    f"{NAME}-{VERSION}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\nSummary: The example wheel of comfystore\n",
    f"{NAME}-{VERSION}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: comfystore-example\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    f"{NAME}-{VERSION}.dist-info/entry_points.txt": f"[console_scripts]\ncomfyhello = {NAME}:main\n",
}


def record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}\n"


out = pathlib.Path(__file__).resolve().parent.parent / "wheels" / f"{NAME}-{VERSION}-py3-none-any.whl"
out.parent.mkdir(parents=True, exist_ok=True)
record_path = f"{NAME}-{VERSION}.dist-info/RECORD"
record = "".join(record_line(p, d.encode()) for p, d in FILES.items()) + f"{record_path},,\n"
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for path, data in list(FILES.items()) + [(record_path, record)]:
        info = zipfile.ZipInfo(path, date_time=(2024, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, data)
print(out)
