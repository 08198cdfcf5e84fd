"""Flax Linen networks of AudioX-Turbo. One definition per network; many parameter trees."""
