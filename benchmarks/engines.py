"""Engine benchmark (same as ``hdr-service bench``); see service/bench/engines.py.

    python benchmarks/engines.py --checkpoint CKPT --sizes 512x512 \
        --backends official-style,torch,onnxruntime --json out.json
"""

import sys

from service.bench.engines import main

if __name__ == "__main__":
    sys.exit(main())
