from madcache.cli import main

main()
