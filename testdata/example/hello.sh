#!/bin/sh
echo "$(cat "${GREETING_FILE:-/app/greeting.txt}") (from $(hostname))"
