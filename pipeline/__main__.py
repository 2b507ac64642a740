"""``python -m gan_pipe``: the command line, as torchrun starts it in every process.

torchrun --nproc-per-node 2 -m gan_pipe run recipes/dcgan.toml
"""

from gan_pipe import distributed
from gan_pipe.cli import main

if __name__ == "__main__":
    try:
        main()
    finally:
        distributed.stop()
