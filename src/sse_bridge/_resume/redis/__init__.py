"""The Redis store (the ``resume`` extra): several bridge instances share their streams."""
