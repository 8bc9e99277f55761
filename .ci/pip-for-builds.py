"""Hand this machine's pip set-up to the image builds (images/build.sh), as shell assignments.

    eval "$(python3 .ci/pip-for-builds.py DIR)"

Reads ``pip config list`` (files and PIP_* environment) and sets:
  CA_BUNDLE   the CA bundle pip trusts here (``cert``), for HTTPS through this network's proxy
  WHEELHOUSE  the first local directory among ``find-links`` (the CPU torch wheel lies there)
  PIP_CONF    DIR/pip.conf with the settings a build can use: index-url, the http(s) extra
              index URLs, trusted-host and timeout. Local paths and file:// indexes cannot be
              reached from a build and are left out (WHEELHOUSE covers find-links).
"""

import shlex
import subprocess
import sys
from pathlib import Path

PASSED_ON = ("index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout")


def pip_config(pip: str) -> dict[str, str]:
    """``pip config list`` as {option: value}; the environment (``:env:``) wins over files."""
    lines = subprocess.run([pip, "config", "list"], check=True, capture_output=True, text=True).stdout
    files, env = {}, {}
    for line in lines.splitlines():
        key, _, value = line.partition("=")
        section, _, option = key.rpartition(".")
        value = value.strip().strip("'\"")
        if section == ":env:":
            env[option] = value
        elif section in ("global", "install"):
            files[option] = value
    return files | env


def main() -> None:
    out_dir = Path(sys.argv[1])
    pip = sys.argv[2] if len(sys.argv) > 2 else "pip"
    config = pip_config(pip)
    settings = {}
    for option in PASSED_ON:
        if option not in config:
            continue
        values = config[option].split()
        if option.endswith("index-url"):
            values = [v for v in values if v.startswith(("http://", "https://"))]
        if values:
            settings["timeout" if option == "default-timeout" else option] = " ".join(values)
    pip_conf = out_dir / "pip.conf"
    pip_conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()), encoding="utf-8")

    assignments = {"PIP_CONF": str(pip_conf)}
    if config.get("cert") and Path(config["cert"]).is_file():
        assignments["CA_BUNDLE"] = config["cert"]
    wheel_dirs = [p for p in config.get("find-links", "").split() if Path(p).is_dir()]
    if wheel_dirs:
        assignments["WHEELHOUSE"] = wheel_dirs[0]
    for name, value in assignments.items():
        print(f"{name}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
