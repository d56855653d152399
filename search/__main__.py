from promptsearch.search.cli import main

main()
