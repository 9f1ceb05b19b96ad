"""The forward-chaining engine: values, methods, compiled rule code, working memory and agenda."""
