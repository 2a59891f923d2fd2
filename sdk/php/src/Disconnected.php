<?php

declare(strict_types=1);

namespace Hotsock;

/** The server closed the socket before a request was answered. */
final class Disconnected extends HotsockException
{
}
