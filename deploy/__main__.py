"""`python -m deploy init --app yourapp:create_app`: set a Flask project up for the suite."""

from .scaffold import main

if __name__ == "__main__":
    main()
