#!/bin/sh
# The demo's deploy command: what helm, ansible or your own script would be. opsloop runs it with an
# argv list (no shell), a clean environment and a timeout, and streams its output to the release thread.
service="$1" version="$2" env="$3"
echo "Deploying $service $version to $env"
for step in "pulling image $service:$version" "updating pods 1/3" "updating pods 2/3" "updating pods 3/3"; do
    echo "$step"
    sleep 0.4
done
echo "$service $version is live in $env"
