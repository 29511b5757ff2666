"""Argument checks shared by the operators."""


def check_positive_int(value, name):
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int >= 1 (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}')
