"""``python -m nmfseg`` (also what ``torchrun -m nmfseg train ...`` runs)."""

from nmfseg.cli import main

if __name__ == "__main__":
    main()
