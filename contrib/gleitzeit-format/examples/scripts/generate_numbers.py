# Gleitzeit-style script: `context` is given, `result` is returned.
count = context.get("count", 3)  # noqa: F821 (predefined by python.run)
numbers = [n * n for n in range(1, count + 1)]
result = {"numbers": numbers, "count": len(numbers)}
