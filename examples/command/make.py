"""Writes a small table of numbers: the first step of the command-step example workflow."""
import random

random.seed(7)
for i in range(20):
    print(f"{i},{random.randint(0, 1000)}")
