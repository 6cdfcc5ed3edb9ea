"""The private throwaway PostgreSQL server of development and tests."""
