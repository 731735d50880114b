print("dlmbench")
